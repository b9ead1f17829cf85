"""Persian review texts of the text tests (written for them; Arabic ي/ك, ZWNJ and Persian digits included)."""

from __future__ import annotations

# Customer reviews (Digikala style) for two tags, plus unrelated sentences.
BUY = [
    "ارزش خریدنش رو بی شک داره",
    "پیشنهاد میکنم از این بخرید خیلی عالیه",
    "با این قیمت بهترین انتخابه حتما بخرید",
    "من راضی هستم و به دوستانم هم پیشنهاد میکنم",
]
POOR = [
    "کیفیت ساختش خیلی پایینه و زود خراب شد",
    "بعد از دو هفته باتریش از کار افتاد اصلا نخرید",
    "جنسش بی کیفیته و پولتون رو هدر ندید",
    "دکمه هاش شل هستن و صدای بدی میده",
]
OTHER = [
    "هوای تهران امروز آفتابی و گرم است",
    "قیمت این گوشی ۱۲ میلیون و ۵۰۰ هزار تومان است",
    "می‌خواهم فردا به کتابخانه بروم",
]
# (canonical, variant) pairs a reader sees as one text.
VARIANTS = [
    ("پیشنهاد میکنم از این بخرید خیلی عالیه", "پيشنهاد ميكنم از این بخريد خيلي عاليه"),  # Arabic ي/ك
    ("می‌خواهم فردا به کتابخانه بروم", "مي\u200c\u200cخواهم  فردا  به کتابخانه بروم\u200c"),  # ZWNJ, spaces
    # Persian and Arabic-Indic digits
    ("قیمت این گوشی ۱۲ میلیون و ۵۰۰ هزار تومان است", "قیمت این گوشی ١٢ میلیون و ٥٠٠ هزار تومان است"),
    ("کیفیت ساختش خیلی پایینه و زود خراب شد", "کیفیتِ ساختـــش خیلی پایینه و زود خراب شُد"),  # harakat, tatweel
]
CORPUS = [*BUY, *POOR, *OTHER]
# Held out from fitting: the head must generalise to these.
BUY_HELD_OUT = [
    "عالیه حتما بخرید پشیمون نمیشید",
    "خرید خوبی بود به بقیه هم توصیه میکنم",
]
POOR_HELD_OUT = [
    "خیلی بی کیفیت بود و بعد از یک ماه خراب شد",
    "کیفیتش خیلی پایینه و بعد از چند روز شکست",
]
# Paraphrase pairs, and a sentence unrelated to both.
PARAPHRASES = [
    ("این گوشی باتری خیلی خوبی داره", "شارژ باتری این موبایل عالیه"),
    ("ارسال سفارش خیلی طول کشید", "بسته خیلی دیر به دستم رسید"),
]
UNRELATED = "فردا در تهران باران می‌بارد"
# Zero-shot (tag titles alone): four clearly different topics (sport, cooking, weather, phones), and unseen texts,
# one Persian and one English per topic, that do not repeat their title's words: (text, index of its title).
ZERO_SHOT_TITLES = ("فوتبال و ورزش", "آشپزی و دستور غذا", "آب و هوا", "گوشی موبایل")
ZERO_SHOT_UNSEEN = [
    ("تیم ملی در بازی دیشب دو گل زد و برنده شد", 0),
    ("The striker scored twice and the team won the match", 0),
    ("برای پختن قورمه سبزی اول سبزی را سرخ کنید", 1),
    ("Add the onions to the pan and simmer the sauce for ten minutes", 1),
    ("فردا در تهران باران می‌بارد و هوا سرد می‌شود", 2),
    ("Heavy snow and strong winds are expected tomorrow", 2),
    ("باتری این گوشی تا شب شارژ نگه می‌داره و دوربینش عالیه", 3),
    ("My new smartphone has a great camera and the battery lasts all day", 3),
]
