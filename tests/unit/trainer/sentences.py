"""Labelled shop reviews (Persian and English, written for these tests): four tags, 14 reviews each."""

from __future__ import annotations

RECOMMEND = [
    "ارزش خریدنش رو بی شک داره",
    "پیشنهاد میکنم از این بخرید خیلی عالیه",
    "من راضی هستم و به دوستانم هم پیشنهاد میکنم",
    "خرید خوبی بود به بقیه هم توصیه میکنم",
    "عالیه حتما بخرید پشیمون نمیشید",
    "بهترین خریدی بود که امسال انجام دادم",
    "اگه دنبال یه محصول خوب هستید همینو بگیرید",
    "دو ساله دارمش و هنوز مثل روز اول کار میکنه، توصیه میکنم",
    "Totally worth it, I recommend it to everyone",
    "Great product, buy it without a second thought",
    "I would definitely buy this again",
    "My whole family uses it now, highly recommended",
    "Best purchase I made this year",
    "If you are on the fence, just get it",
]
POOR_QUALITY = [
    "کیفیت ساختش خیلی پایینه و زود خراب شد",
    "بعد از دو هفته باتریش از کار افتاد",
    "جنسش بی کیفیته و پلاستیکش ترک برداشت",
    "دکمه هاش شل هستن و صدای بدی میده",
    "خیلی بی کیفیت بود و بعد از یک ماه خراب شد",
    "دوختش باز شد و رنگش بعد از یک شستشو رفت",
    "صفحه نمایشش بعد از چند روز خط افتاد",
    "کابلش خیلی نازکه و زود پاره شد",
    "It broke after two weeks of normal use",
    "The plastic feels cheap and the hinge cracked",
    "Stopped charging after a month, poor build quality",
    "The stitching came apart on the first day",
    "Buttons are loose and it rattles when you shake it",
    "The screen flickers and the case is already scratched",
]
DELIVERY = [
    "ارسال سفارش خیلی طول کشید",
    "بسته خیلی دیر به دستم رسید",
    "ده روز طول کشید تا سفارشم برسه",
    "جعبه موقع ارسال له شده بود",
    "پیک دو بار نیومد و سفارش دیر رسید",
    "زمان تحویل رو رعایت نکردن و یک هفته تاخیر داشت",
    "بسته بندی پاره بود و کارتن خیس شده بود",
    "کد رهگیری کار نمیکرد و نمیدونستم بسته کجاست",
    "Shipping took almost three weeks",
    "The parcel arrived late and the box was crushed",
    "The courier never showed up on the delivery day",
    "Tracking number did not work and the package was delayed",
    "It came a week after the promised delivery date",
    "The package was left in the rain and arrived soaked",
]
PRICE = [
    "قیمتش نسبت به کیفیتش خیلی گرونه",
    "همین محصول تو مغازه های دیگه ارزون تره",
    "یک ماهه قیمتش دو برابر شده",
    "برای این قیمت انتظار بیشتری داشتم",
    "تخفیفش واقعی نبود و قیمت رو اول بالا بردن",
    "هزینه ارسالش از خود جنس بیشتر شد",
    "خیلی گرون حساب کردن، نمی ارزه",
    "با این پول میشه دو تا از برند بهتر خرید",
    "Way too expensive for what you get",
    "The same item is much cheaper in other stores",
    "They raised the price right before the sale",
    "Overpriced, I expected more for this money",
    "The shipping fee cost more than the product itself",
    "Not worth the price at all",
]
TAGS: dict[str, list[str]] = {
    "توصیه خرید": RECOMMEND,
    "کیفیت پایین": POOR_QUALITY,
    "ارسال": DELIVERY,
    "قیمت": PRICE,
}
