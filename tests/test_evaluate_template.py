"""The evaluate report's template escapes what it is given: chip names, paths and notes reach the page as text."""

from __future__ import annotations

from amazonmine.stages.evaluate import MACROS_TEMPLATE, _looks_html, _templates


def test_a_hostile_chip_name_is_text_and_its_file_name_a_quoted_address():
    figure = _templates().get_template(MACROS_TEMPLATE).module.figure
    html = str(figure({"name": 'x"><script>alert(1)</script>', "rel": "gallery/a b#?<i>.jpg",
                       "caption": ["<b>train_1</b>", "p=0.900"], "good": True, "size": 48, "problem": None}))
    assert "<script" not in html and "<b>" not in html and "<i>" not in html
    assert 'alt="x&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"' in html
    assert 'src="gallery/a%20b%23%3F%3Ci%3E.jpg"' in html
    assert "&lt;b&gt;train_1&lt;/b&gt;<br>p=0.900" in html  # the line break is the template's, not the data's
    assert html.startswith('<figure class="hit"><img ') and 'width="48"' in html


def test_the_lockbox_warning_escapes_what_the_looks_file_holds():
    looks = [{"scored_utc": "<img src=x onerror=alert(1)>", "mean_f2": 0.5}, {"mean_f2": 0.6}]
    html = _looks_html(looks)
    assert html.startswith('<p class="missing">This is look 2 at the lockbox') and "<img" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;: 0.5000" in html
