import io

from shared.progress_bar import ProgressBar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_one_line_per_draw_and_unknown_fractions_show_as_such():
    stream = io.StringIO()
    bar = ProgressBar(stream, interval=0)
    assert bar.due()
    bar.draw(0.5, "5/10 documents")
    bar.draw(None, "7/? documents")
    bar.draw(3.0, "done")  # clamped: a total counted before more work arrived
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines == ["[###############...............]  50% 5/10 documents",
                     "[??????????????????????????????]     7/? documents",
                     "[##############################] 100% done"]


def test_a_terminal_gets_one_line_redrawn_in_place_at_most_once_per_interval():
    stream = Terminal()
    bar = ProgressBar(stream, interval=60, line_width=50)
    assert bar.due() and not bar.due()  # the first draw is due, the next only after the interval
    bar.draw(0.1, "x" * 100)
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\r[###") and text.endswith("\n") and len(text) == 1 + 50 + 1
