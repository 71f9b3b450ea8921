"""One run carried to its end (stilts.attempt): what a try does with a folder another job holds."""
import threading
import time

from stilts import attempt, run_folder
from stilts.study import Run


def test_a_run_whose_folder_another_job_holds_waits_for_it(tmp_path):
    """On a cluster, the job of a killed stilts-run may still hold a run's folder: a new job waits for
    it to let go (and says so in the run's log), instead of failing on the held folder."""
    run = Run("r", str(tmp_path / "run"), [], ("val_metrics.json",))
    held, release = threading.Event(), threading.Event()

    def old_job():
        with run_folder.locked(run.folder):
            held.set()
            release.wait()

    holder = threading.Thread(target=old_job)
    holder.start()
    held.wait()
    waiter = threading.Thread(target=attempt.wait_while_held, args=(run, 0.05))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive()  # still waiting while the folder is held
    release.set()
    waiter.join(timeout=10)
    holder.join()
    assert not waiter.is_alive()
    log = (tmp_path / "run" / attempt.LOG_NAME).read_text()
    assert log.startswith("# stilts-run: waiting for process ") and "holds this run's folder" in log


def test_a_free_folder_is_not_waited_for(tmp_path):
    run = Run("r", str(tmp_path / "run"), [], ("val_metrics.json",))
    attempt.wait_while_held(run)
    assert not (tmp_path / "run").exists()
