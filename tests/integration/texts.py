"""Labelled reviews for the end-to-end tests: Persian (with Arabic ي/ك forms, ZWNJ, Persian digits) and English."""

from __future__ import annotations

RECOMMEND = "توصیه خرید"
UNHAPPY = "ناراضی از خرید"
DELIVERY = "ارسال و تحویل"

TRAIN: dict[str, list[str]] = {
    RECOMMEND: [
        "پیشنهاد میکنم از این بخرید خیلی عالیه.",
        "ارزش خریدش رو داره، به همه توصیه می‌کنم",
        "كيفيت عالي داره، حتما بخريد",
        "I totally recommend this phone, worth every penny.",
        "Great value, buy it without hesitation.",
        "بهترین خریدی بود که امسال کردم، پیشنهاد می‌کنم",
    ],
    UNHAPPY: [
        "از خریدم پشیمونم، کیفیتش افتضاحه",
        "بعد از ۲ هفته خراب شد، اصلا راضی نیستم",
        "پولم هدر رفت، به هیچ عنوان نخرید",
        "Terrible quality, it broke after three days. I regret buying it.",
        "Very disappointed, I want my money back.",
        "جنسش خيلي بد بود و اصلا شبيه عكس نبود",
    ],
    DELIVERY: [
        "بسته یک روزه به دستم رسید، ارسال خیلی سریع بود",
        "پیک دیر آورد و بسته‌بندی پاره شده بود",
        "ارسالش ۵ روز طول کشید",
        "The package arrived two days late and the box was damaged.",
        "Shipping was fast, delivered the next morning.",
        "مامور ارسال خیلی مودب بود و سر وقت تحویل داد",
    ],
}

UNSEEN: list[tuple[str, str]] = [
    ("ارزش خریدنش رو بی شک داره", RECOMMEND),
    ("Highly recommended, I would buy it again.", RECOMMEND),
    ("خیلی بد بود، پشیمون شدم که خریدم", UNHAPPY),
    ("It stopped working after a week, awful purchase.", UNHAPPY),
    ("سفارشم سه روز دیرتر از موعد رسید", DELIVERY),
    ("The courier delivered my order quickly.", DELIVERY),
]
