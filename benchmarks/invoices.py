"""Synthetic invoices in Russian and English with their true number, date and total.

    make_invoice(random.Random(seed)) -> (PIL image, Truth)

Each invoice draws its language, font (DejaVu Sans / Serif / Sans Condensed / Sans Mono from
fonts-dejavu-core, STIX General from matplotlib), size and page width, one of four header layouts
(lines under a title; number and date in the title, Russian style; a label/value table on the
right; labels above values), the label wording, the date and amount formats, distractors (due
date, subtotal and tax, contract number and date, bank account, amount in words) and degradations
(rotation, blur, noise, JPEG artefacts, lower resolution, speckles, faint ink). Used by
benchmarks/bench_extract.py and the extraction tests.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont

DEJAVU = Path("/usr/share/fonts/truetype/dejavu")
RU_MONTHS = ("января", "февраля", "марта", "апреля", "мая", "июня", "июля", "августа", "сентября", "октября",
             "ноября", "декабря")
EN_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
             "November", "December")


def _stix_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def font_families() -> dict[str, tuple[Path, Path]]:
    """name -> (regular, bold) font files with Cyrillic, those that are installed."""
    candidates = {
        "DejaVu Sans": (DEJAVU / "DejaVuSans.ttf", DEJAVU / "DejaVuSans-Bold.ttf"),
        "DejaVu Serif": (DEJAVU / "DejaVuSerif.ttf", DEJAVU / "DejaVuSerif-Bold.ttf"),
        "DejaVu Sans Condensed": (DEJAVU / "DejaVuSansCondensed.ttf", DEJAVU / "DejaVuSansCondensed-Bold.ttf"),
        "DejaVu Sans Mono": (DEJAVU / "DejaVuSansMono.ttf", DEJAVU / "DejaVuSansMono-Bold.ttf"),
        "STIX General": (_stix_dir() / "STIXGeneral.ttf", _stix_dir() / "STIXGeneralBol.ttf"),
    }
    return {name: files for name, files in candidates.items() if files[0].exists() and files[1].exists()}


@dataclass
class Truth:
    number: str
    date: str  # ISO 8601
    total: float
    language: str
    layout: str
    font: str
    degradations: list[str] = field(default_factory=list)


def _ru_amount(value: float, rng: random.Random) -> str:
    whole, cents = divmod(round(value * 100), 100)
    grouped = f"{whole:,}".replace(",", rng.choice((" ", " ", "")))
    return f"{grouped},{cents:02d}" + rng.choice(("", "", " руб.", " ₽", " р."))


def _en_amount(value: float, rng: random.Random) -> str:
    style = rng.choice(("us", "us", "us_plain", "eu", "space"))
    whole, cents = divmod(round(value * 100), 100)
    if style == "eu":
        text = f"{whole:,}".replace(",", ".") + f",{cents:02d}"
        return rng.choice((f"€{text}", f"{text} EUR"))
    if style == "space":
        return f"{whole:,}".replace(",", " ") + f".{cents:02d} USD"
    text = f"{whole:,}.{cents:02d}" if style == "us" else f"{whole}.{cents:02d}"
    return rng.choice((f"${text}", f"USD {text}", text, f"{text} GBP", f"£{text}"))


def _ru_date(day: date, rng: random.Random) -> str:
    style = rng.choice(("numeric", "numeric", "words", "quoted", "iso"))
    if style == "numeric":
        return day.strftime("%d.%m.%Y")
    if style == "words":
        return f"{day.day} {RU_MONTHS[day.month - 1]} {day.year} г."
    if style == "quoted":
        return f"«{day.day:02d}» {RU_MONTHS[day.month - 1]} {day.year} г."
    return day.isoformat()


def _en_date(day: date, rng: random.Random) -> str:
    style = rng.choice(("us_words", "words", "short", "iso", "dotted", "slashed"))
    month = EN_MONTHS[day.month - 1]
    return {"us_words": f"{month} {day.day}, {day.year}", "words": f"{day.day} {month} {day.year}",
            "short": f"{day.day:02d} {month[:3]} {day.year}", "iso": day.isoformat(),
            "dotted": day.strftime("%d.%m.%Y"), "slashed": day.strftime("%d/%m/%Y")}[style]


def _number(language: str, rng: random.Random, year: int) -> str:
    n = rng.randint(1, 9999)
    if language == "ru":
        return rng.choice((f"{n}", f"{n:05d}", f"БП-{n:06d}", f"{n}/{year % 100:02d}", f"{year}-{n:04d}"))
    return rng.choice((f"INV-{year}-{n:04d}", f"{n}", f"{year}/{n:03d}", f"A-{n:05d}", f"INV{n:06d}"))


RU_COMPANIES = ('ООО "Ромашка"', 'АО "Северный ветер"', "ИП Петров Сергей Иванович", 'ООО "Техснаб-Урал"',
                'ООО "Вектор Плюс"', 'ЗАО "Балтийская торговая компания"')
EN_COMPANIES = ("Northwind Trading Ltd", "Blue Harbor Supplies Inc.", "Greenfield Consulting LLC",
                "Acme Components GmbH", "Silverline Logistics Ltd", "Maple & Oak Design Studio")
RU_ITEMS = ("Бумага офисная А4", "Картридж лазерный", "Услуги доставки", "Монтаж оборудования",
            "Консультационные услуги", "Кабель медный 3x2,5", "Ноутбук 15.6\"", "Техническое обслуживание")
EN_ITEMS = ("Office paper A4", "Laser toner cartridge", "Delivery services", "Equipment installation",
            "Consulting services", "Copper cable 3x2.5", "Laptop 15.6\"", "Annual maintenance")
RU_CITIES = ("г. Москва, ул. Ленина, д. 5", "г. Казань, пр. Победы, д. 112, оф. 4",
             "г. Екатеринбург, ул. Малышева, д. 36")
EN_CITIES = ("221 Baker Street, London NW1 6XE", "1200 Market St, Suite 400, Philadelphia, PA 19107",
             "Hauptstrasse 14, 10115 Berlin")


class _Page:
    """A white page and a cursor: text is written line by line with the invoice's fonts."""

    def __init__(self, width: int, fonts: tuple[Path, Path], size: int, ink: int):
        self.image = Image.new("L", (width, int(width * 1.25)), 255)
        self.draw = ImageDraw.Draw(self.image)
        self.regular = ImageFont.truetype(str(fonts[0]), size)
        self.bold = ImageFont.truetype(str(fonts[1]), size)
        self.title = ImageFont.truetype(str(fonts[1]), int(size * 1.5))
        self.size, self.ink, self.width = size, ink, width
        self.margin = int(width * 0.07)
        self.y = self.margin

    def text(self, x: float, text: str, font=None, y: float | None = None) -> float:
        font = font or self.regular
        top = self.y if y is None else y
        self.draw.text((x, top), text, font=font, fill=self.ink)
        return self.draw.textlength(text, font=font)

    def line(self, text: str, font=None, x: float | None = None, right: bool = False) -> None:
        font = font or self.regular
        if right:
            x = self.width - self.margin - self.draw.textlength(text, font=font)
        self.text(self.margin if x is None else x, text, font)
        self.newline(font)

    def newline(self, font=None, factor: float = 1.55) -> None:
        font = font or self.regular
        self.y += int(font.size * factor)

    def rule(self) -> None:
        self.draw.line((self.margin, self.y, self.width - self.margin, self.y), fill=self.ink, width=2)
        self.y += int(self.size * 0.6)


def _labels(language: str, rng: random.Random) -> dict[str, str]:
    if language == "ru":
        return {"number": rng.choice(("Счёт №", "Счет №", "Номер счёта:", "Счёт на оплату №", "Счёт-фактура №")),
                "date": rng.choice(("Дата:", "Дата счёта:", "Дата выставления:")),
                "due": rng.choice(("Срок оплаты:", "Оплатить до:")),
                "total": rng.choice(("Итого к оплате:", "Всего к оплате:", "Сумма к оплате:", "Итого:")),
                "subtotal": "Сумма без НДС:", "vat": rng.choice(("В том числе НДС (20%):", "НДС 20%:")),
                "title": rng.choice(("СЧЁТ НА ОПЛАТУ", "Счёт на оплату", "СЧЁТ"))}
    return {"number": rng.choice(("Invoice No.:", "Invoice #:", "Invoice number:", "Invoice Nr.", "INVOICE NO.")),
            "date": rng.choice(("Date:", "Invoice date:", "Date of issue:", "Issue date:")),
            "due": rng.choice(("Due date:", "Payment due:")),
            "total": rng.choice(("Total:", "Total due:", "Amount due:", "Grand total:", "TOTAL", "Balance due:")),
            "subtotal": rng.choice(("Subtotal:", "Net total:")), "vat": rng.choice(("VAT 20%:", "Tax:", "Sales tax:")),
            "title": rng.choice(("INVOICE", "Invoice", "TAX INVOICE"))}


def _header(page: _Page, layout: str, language: str, labels: dict[str, str], number: str, issued: str,
            due: str, rng: random.Random) -> None:
    if layout == "title_line":  # "Счёт на оплату № 145 от 12.03.2024" / "Invoice No. 145 of 12 March 2024"
        if language == "ru":
            page.line(f"Счёт на оплату № {number} от {issued}", page.title)
        else:
            page.line(f"Invoice {number} dated {issued}", page.title)
        page.line(f"{labels['due']} {due}")
    elif layout == "lines":
        page.line(labels["title"], page.title)
        page.line(f"{labels['number']} {number}", page.bold)
        page.line(f"{labels['date']} {issued}")
        page.line(f"{labels['due']} {due}")
    elif layout == "table_right":
        page.line(labels["title"], page.title)
        column = page.width * rng.uniform(0.45, 0.55)
        values = column + page.width * rng.uniform(0.2, 0.25)
        for label, value in ((labels["number"], number), (labels["date"], issued), (labels["due"], due)):
            page.text(column, label.rstrip(":") + ":", page.bold)
            page.text(values, value)
            page.newline()
    else:  # "above": labels over their values, three columns
        page.line(labels["title"], page.title)
        columns = [page.margin, page.margin + page.width * 0.3, page.margin + page.width * 0.58]
        number_label = rng.choice(("Номер счёта", "Счёт №", "№ счёта") if language == "ru"
                                  else ("Invoice No.", "Invoice number", "Invoice #"))
        for x, label in zip(columns, (number_label, labels["date"], labels["due"])):
            page.text(x, label.rstrip(":"), page.bold)
        page.newline()
        for x, value in zip(columns, (number, issued, due)):
            page.text(x, value)
        page.newline()
    page.newline(factor=0.6)


def _items(page: _Page, language: str, rng: random.Random, amount) -> float:
    names = RU_ITEMS if language == "ru" else EN_ITEMS
    header = (("№", "Наименование", "Кол-во", "Цена", "Сумма") if language == "ru"
              else ("#", "Description", "Qty", "Unit price", rng.choice(("Amount", "Total"))))
    columns = [page.margin, page.margin + page.width * 0.06, page.width * 0.52, page.width * 0.62, page.width * 0.78]
    page.rule()
    for x, title in zip(columns, header):
        page.text(x, title, page.bold)
    page.newline()
    page.rule()
    subtotal = 0.0
    for row in range(rng.randint(2, 5)):
        quantity = rng.randint(1, 12)
        price = round(rng.uniform(5, 4000), 2) if rng.random() < 0.7 else float(rng.randint(1, 400) * 50)
        line_total = round(quantity * price, 2)
        subtotal += line_total
        for x, cell in zip(columns, (str(row + 1), rng.choice(names), str(quantity), amount(price),
                                     amount(line_total))):
            page.text(x, cell)
        page.newline()
    page.rule()
    return round(subtotal, 2)


def _degrade(image: Image.Image, rng: random.Random) -> tuple[Image.Image, list[str]]:
    applied = []
    kinds = rng.sample(("rotation", "blur", "noise", "jpeg", "downscale", "speckle", "faint"), k=rng.randint(0, 3))
    import numpy as np

    for kind in kinds:
        if kind == "rotation":
            angle = rng.uniform(-2.0, 2.0)
            image = image.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)
            applied.append(f"rotation {angle:+.1f}°")
        elif kind == "blur":
            radius = rng.uniform(0.5, 1.1)
            image = image.filter(ImageFilter.GaussianBlur(radius))
            applied.append(f"blur {radius:.1f}")
        elif kind == "noise":
            sigma = rng.uniform(8, 20)
            noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, sigma, (image.height, image.width))
            image = Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8))
            applied.append(f"noise σ{sigma:.0f}")
        elif kind == "jpeg":
            import io

            quality = rng.randint(25, 55)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=quality)
            image = Image.open(io.BytesIO(buffer.getvalue())).convert("L")
            applied.append(f"jpeg q{quality}")
        elif kind == "downscale":
            factor = rng.uniform(0.65, 0.85)
            image = image.resize((int(image.width * factor), int(image.height * factor)), Image.Resampling.LANCZOS)
            applied.append(f"downscale ×{factor:.2f}")
        elif kind == "speckle":
            pixels = np.asarray(image).copy()
            mask = np.random.default_rng(rng.randint(0, 2**31)).random(pixels.shape)
            pixels[mask < 0.003] = 0
            pixels[mask > 0.997] = 255
            image = Image.fromarray(pixels)
            applied.append("speckle")
        else:
            paper = rng.randint(225, 245)
            image = image.point(lambda v, paper=paper: paper - (paper - v) * 0.55)
            applied.append("faint ink")
    return image, applied


LAYOUTS = ("lines", "title_line", "table_right", "above")


def make_invoice(rng: random.Random, families: dict[str, tuple[Path, Path]] | None = None, *,
                 language: str | None = None, layout: str | None = None, degrade: bool = True
                 ) -> tuple[Image.Image, Truth]:
    """One invoice; `language`, `layout` and `degrade=False` pin what is otherwise drawn at random."""
    families = families or font_families()
    language = language or rng.choice(("ru", "en"))
    font_name = rng.choice(sorted(families))
    layout = layout or rng.choice(LAYOUTS)
    width = rng.choice((1240, 1400, 1654))
    size = int(width / rng.uniform(50, 62))
    page = _Page(width, families[font_name], size, ink=rng.randint(0, 40))
    issued_day = date(2019, 1, 1) + timedelta(days=rng.randint(0, 8 * 365))
    due_day = issued_day + timedelta(days=rng.choice((7, 10, 14, 30)))
    number = _number(language, rng, issued_day.year)
    write_date = _ru_date if language == "ru" else _en_date
    style_rng = random.Random(rng.random())  # one amount style per invoice
    style_seed = style_rng.random()

    def amount(value: float) -> str:
        return (_ru_amount if language == "ru" else _en_amount)(value, random.Random(style_seed))

    labels = _labels(language, rng)
    companies, cities = (RU_COMPANIES, RU_CITIES) if language == "ru" else (EN_COMPANIES, EN_CITIES)
    seller, buyer = rng.sample(companies, 2)
    page.line(seller, page.bold)
    page.line(rng.choice(cities))
    if language == "ru":
        page.line(f"ИНН {rng.randint(10**9, 10**10 - 1)} КПП {rng.randint(10**8, 10**9 - 1)}")
        if rng.random() < 0.5:
            page.line(f"Банк получателя: ПАО Сбербанк, БИК 0445{rng.randint(10000, 99999)}")
            page.line(f"Сч. № 30101810{rng.randint(10**11, 10**12 - 1)}")
    else:
        page.line(f"VAT No: GB{rng.randint(10**8, 10**9 - 1)}   Phone: +44 20 {rng.randint(1000, 9999)} "
                  f"{rng.randint(1000, 9999)}")
    page.newline(factor=0.8)
    _header(page, layout, language, labels, number, write_date(issued_day, rng), write_date(due_day, rng), rng)
    if language == "ru":
        page.line(f"Покупатель: {buyer}, {rng.choice(cities)}")
        if rng.random() < 0.4:
            contract_day = issued_day - timedelta(days=rng.randint(20, 400))
            page.line(f"Основание: Договор № {rng.randint(1, 99)}/{rng.randint(1, 12)} от "
                      f"{contract_day.strftime('%d.%m.%Y')}")
    else:
        page.line(f"Bill to: {buyer}")
        page.line(rng.choice(cities))
    page.newline(factor=0.5)
    subtotal = _items(page, language, rng, amount)
    vat = round(subtotal * 0.2, 2)
    total = round(subtotal + vat, 2)
    if rng.random() < 0.6:
        page.line(f"{labels['subtotal']} {amount(subtotal)}", right=True)
        page.line(f"{labels['vat']} {amount(vat)}", right=True)
    page.line(f"{labels['total']} {amount(total)}", page.bold, right=True)
    page.newline(factor=0.8)
    if language == "ru":
        if rng.random() < 0.5:
            page.line(f"Всего наименований {rng.randint(2, 5)}, на сумму {amount(total)}")
        page.line("Оплата в течение 5 банковских дней. Счёт действителен 10 дней.")
    else:
        page.line(f"Payment terms: {rng.choice((7, 14, 30))} days. Thank you for your business!")
    content_bottom = min(page.image.height, page.y + page.margin)
    image = page.image.crop((0, 0, page.image.width, content_bottom))
    image, degradations = _degrade(image, rng) if degrade else (image, [])
    truth = Truth(number=number, date=issued_day.isoformat(), total=total, language=language, layout=layout,
                  font=font_name, degradations=degradations)
    return image.convert("RGB"), truth
