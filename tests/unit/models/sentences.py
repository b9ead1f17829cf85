"""Realistic Persian and English sentences: Arabic ي/ك forms, ZWNJ, Persian digits, emoji."""

PERSIAN = [
    "این فیلم واقعاً عالی بود و بازیگرها فوق‌العاده بازی کردند.",
    "كيفيت اين گوشي خيلي بد بود، بعد از دو هفته باتري‌اش خراب شد.",
    "قیمت: ۱۲۵٬۰۰۰ تومان — ارسال رایگان برای سفارش‌های بالای ۵۰۰ هزار تومان 😍",
    "رستوران شلوغ بود ولی غذا گرم و خوش‌طعم رسید، پیشنهاد می‌کنم 👍",
    "ساعت ۸:۳۰ صبح جلسه‌ی هیئت‌مدیره در طبقه‌ی ۳ برگزار می‌شود.",
    "پشتیبانی هیچ جوابی نداد؛ سه بار تماس گرفتم و هر بار قطع شد!",
    "كتاب را ديروز خريدم و تا نيمه‌شب خواندمش، داستانش گيرا بود.",
    "هوای تهران امروز آلوده است و مدارس تعطیل شده‌اند.",
]
ENGLISH = [
    "The coffee was lukewarm and the croissant was stale; never again.",
    "Fast shipping, the package arrived two days early and well wrapped 📦",
    "Astronauts repaired the telescope's gyroscopes during a six-hour spacewalk.",
    "My cat refuses to eat anything except the expensive salmon pâté.",
    "Order #4521 was cancelled without notice — I want a refund!!!",
    "A quiet café with good Wi-Fi, perfect for working on a rainy afternoon.",
]
MIXED = [
    "",
    "ok",
    "😀😀😀",
    "iPhone ۱۵ پرو مکس با 256GB حافظه",
    "  spaces\tand\ttabs\nand newlines  ",
    "Ｆｕｌｌｗｉｄｔｈ ｌｅｔｔｅｒｓ and the ﬁ ligature",
]
ALL = PERSIAN + ENGLISH + MIXED
