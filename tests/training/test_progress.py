import io

from mixer.training.progress import StepLine


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_a_log_gets_a_line_at_most_every_interval_with_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    line = StepLine("run npt", total_steps=100, tokens_per_step=1000, stream=out, every=30, clock=clock)
    for step in range(10, 101, 10):  # 10 steps every 10 s: 1,000 tokens/s
        clock.t = step
        line.update(step, 5.0 - step / 100)
    line.close()
    lines = out.getvalue().splitlines()
    # the first step, then every 30 s, and the last step always
    assert [ln.split("|")[0].strip() for ln in lines] == ["run npt: step 10/100", "run npt: step 40/100",
                                                          "run npt: step 70/100", "run npt: step 100/100"]
    assert lines[1] == "run npt: step 40/100 | loss 4.6000 | 1K tok/s | ETA 0:01:00"
    assert lines[-1].endswith("ETA 0:00:00")


def test_a_terminal_line_is_rewritten_in_place():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out, clock = Tty(), Clock()
    line = StepLine("x", total_steps=4, tokens_per_step=10, stream=out, clock=clock)
    for step in (1, 2, 3):
        clock.t = step
        line.update(step, None)
    line.close()
    text = out.getvalue()
    assert text.count("\r\033[K") == 3 and text.endswith("\n")
    assert "x: step 3/4 | 10 tok/s | ETA 0:00:01" in text


def test_litgpt_iteration_lines_are_read_and_nothing_else():
    from mixer_litgpt.logs import step_of_line

    line = ("Epoch 1 | iter 40 step 20 | loss train: 6.123, val: n/a | iter time: 30.00 ms (step) "
            "remaining time: 0:01:23")
    assert step_of_line(line) == (20, 6.123)
    assert step_of_line("Epoch 3 | iter 7 step 7 | loss train: 4.5e-01, val: 2.1 | iter time: 1 ms") == (7, 0.45)
    assert step_of_line("Validating ...") is None and step_of_line("Seed set to 0") is None
