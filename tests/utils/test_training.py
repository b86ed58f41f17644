"""The training loops' shared bookkeeping (utils.training)."""


def test_step_log_keeps_a_history_row_and_asks_for_a_checkpoint_on_schedule_and_at_the_last_step():
    from tailfill.utils.training import StepLog

    class Bar:
        def __init__(self):
            self.n = 0

        def update(self, k):
            self.n += k

        def set_postfix(self, **kw):
            pass

    class Accelerator:
        def __init__(self):
            self.logged = []

        def log(self, values, step):
            self.logged.append((step, values))

    history, bar, acc = [{"step": 0, "loss": 9.0, "seconds": 0.0}], Bar(), Accelerator()  # resumed: kept
    book = StepLog("diffusion", acc, bar, history, total=7, log_every=3, checkpoint_every=5, batch_size=4)
    due = [book.after(step, float(step)) for step in range(1, 8)]
    assert due == [False, False, False, False, True, False, True]
    assert [(h["step"], h["loss"]) for h in history] == [(0, 9.0), (3, 2.0), (6, 5.0), (7, 7.0)]
    assert bar.n == 7 and acc.logged[-1] == (7, {"diffusion/loss": 7.0})
