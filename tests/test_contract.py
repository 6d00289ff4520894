"""What in the run options makes a different result, and so a different key in the store and the pages."""
from models.contract import RunOptions


def test_only_what_changes_the_output_is_in_the_key():
    assert RunOptions().output_key("text") is None
    assert RunOptions(max_pixels=500_000, max_new_tokens=512).output_key("text") is None  # a retry's budgets
    assert RunOptions(prompt="Who signed it?").output_key("prompt") == "Who signed it?"
    assert RunOptions(prompt="ignored").output_key("text") is None
    assert RunOptions(languages="eng").output_key("text") == "languages=eng"
    assert RunOptions(languages="eng").output_key("text") != RunOptions().output_key("text")
