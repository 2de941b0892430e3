from training.text import normalize


def test_urls_become_one_token_and_the_rest_is_kept():
    text = "$BYND - JPMorgan cuts https://t.co/bd0xbFGjkT\nsee www.example.com/x (NYSE: BYND)"
    assert normalize(text, "http") == "$BYND - JPMorgan cuts http\nsee http (NYSE: BYND)"
    assert normalize(text) == text  # off unless the model was trained with it
