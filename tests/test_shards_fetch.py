"""Pure parts of fetching: X's size variants, the allow-list, Retry-After parsing."""
from email.utils import formatdate
import time

import requests

from shards.fetch import FetchConfig, host_allowed, retry_delay, x_media_url


def response_with(headers: dict) -> requests.Response:
    response = requests.Response()
    response.status_code = 429
    response.headers.update(headers)
    return response


def test_x_media_urls_ask_for_the_size_variant():
    assert x_media_url("https://pbs.twimg.com/media/AbC.jpg", "medium") == \
        "https://pbs.twimg.com/media/AbC?format=jpg&name=medium"
    assert x_media_url("https://pbs.twimg.com/media/AbC?format=png&name=orig", "small") == \
        "https://pbs.twimg.com/media/AbC?format=png&name=small"
    assert x_media_url("http://127.0.0.1:9/a.jpg", "medium") == "http://127.0.0.1:9/a.jpg"
    assert x_media_url("https://pbs.twimg.com/media/AbC.jpg", None).endswith("AbC.jpg")


def test_allow_list_is_exact_unless_a_domain_is_given():
    assert host_allowed("pbs.twimg.com", ("pbs.twimg.com",))
    assert not host_allowed("evil-pbs.twimg.com.example", ("pbs.twimg.com",))
    assert host_allowed("a.b.example.org", (".example.org",)) and not host_allowed("example.org.evil", (".example.org",))
    assert not host_allowed(None, ("pbs.twimg.com",))


def test_retry_after_seconds_dates_backoff_and_cap():
    config = FetchConfig(backoff=0.25, max_retry_after=30)
    assert retry_delay(response_with({"Retry-After": "2"}), 0, config) == 2.0
    assert 5 <= retry_delay(response_with({"Retry-After": formatdate(time.time() + 7, usegmt=True)}), 0, config) <= 7
    assert retry_delay(response_with({}), 2, config) == 1.0  # 0.25 · 2²
    assert retry_delay(None, 0, config) == 0.25  # a timeout: plain backoff
    assert retry_delay(response_with({"Retry-After": "3600"}), 0, config) is None  # give up, record the 429
