"""One run carried to its end (stilts.attempt): what a try does with a folder another job holds."""
import os
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


def test_a_folder_an_older_job_wrote_into_meanwhile_is_looked_at_again(tmp_path, monkeypatch):
    """On a cluster, the job of a killed stilts-run may start writing into a run's folder (and even
    finish the run) after a new job looked at it and before its try: that try's refusal ("not empty")
    is no bad input of the user's. The new job looks again: a finished run is skipped, else it goes on
    over the older job's files."""
    for older_job_finishes in (False, True):
        run = Run("r", str(tmp_path / f"run{older_job_finishes}"), [], ("val_metrics.json",))
        commands = []

        def fake_run(command, log, env, stop=None):
            commands.append(command)
            if len(commands) == 1:  # meanwhile, the older job wrote (or finished) the run
                os.makedirs(run.folder, exist_ok=True)
                name = "val_metrics.json" if older_job_finishes else "args.json"
                with open(os.path.join(run.folder, name), "w") as f:
                    f.write("{}")
                log.write("train.py: error: output folder exists and is not empty\n")
                log.flush()
                return attempt.BAD_INPUT
            with open(os.path.join(run.folder, "val_metrics.json"), "w") as f:
                f.write("{}")
            return 0

        monkeypatch.setattr(attempt, "_run", fake_run)
        monkeypatch.setattr(Run, "finished", lambda self: os.path.isfile(os.path.join(self.folder, "val_metrics.json")))
        outcome = attempt.attempt(run, attempt.Attempts(preemptible=True))
        assert outcome.status == ("skipped" if older_job_finishes else "finished"), outcome
        assert len(commands) == (1 if older_job_finishes else 2)
        assert "--force-overwrite" not in commands[0] and (older_job_finishes or "--force-overwrite" in commands[1])
