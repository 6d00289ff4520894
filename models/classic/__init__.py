"""What the classic CPU engines (Tesseract, RapidOCR) share: language data, script detection, page layout."""
