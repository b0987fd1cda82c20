"""Progress off a terminal: plain lines, no carriage returns, a last line at the end."""
from hybrid_vit_cascade.progress import PlainProgress, progress_bar


def test_off_a_terminal_the_loop_prints_plain_lines(capsys):
    bar = progress_bar(range(3), "evaluate", "case")  # pytest's stderr is not a terminal
    assert isinstance(bar, PlainProgress)
    seen = []
    for i in bar:
        bar.set_postfix_str(f"case_{i}")
        seen.append(i)
    bar.close()
    err = capsys.readouterr().err
    assert seen == [0, 1, 2]
    assert "\r" not in err
    assert err.strip().splitlines()[-1].startswith("evaluate: 3/3 case (case_2)")


def test_lines_are_rate_limited_and_disabled_means_silent(capsys):
    list(PlainProgress(range(100), "phantoms", "ct", None, True, every_s=3600))
    assert len(capsys.readouterr().err.strip().splitlines()) == 1  # only the final line
    list(PlainProgress(range(5), "phantoms", "ct", None, False))
    assert capsys.readouterr().err == ""
