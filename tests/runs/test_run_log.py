"""run.log: the libraries' warnings and log lines go to the run folder, not the terminal;
Flower's errors show on the terminal too; everything is as before once the run ends."""

import logging
import warnings

from fedmem.runs.run_log import LOG_FILE, to_run_log


def test_warnings_and_flower_lines_go_to_the_run_log_and_errors_stay_visible(tmp_path, capfd):
    flwr = logging.getLogger("flwr")
    console = logging.StreamHandler()  # stands for Flower's own console handler
    flwr.addHandler(console)
    level = flwr.level
    flwr.setLevel(logging.INFO)
    try:
        with to_run_log(tmp_path):
            warnings.warn("Secure RNG turned off", UserWarning, stacklevel=1)
            flwr.warning("Manually terminating ClientAppActor")
            flwr.error("the ServerApp raised")
        out, err = capfd.readouterr()
        assert "Secure RNG" not in out + err and "Manually terminating" not in out + err
        assert "the ServerApp raised" in err
        log = (tmp_path / LOG_FILE).read_text()
        for line in ("Secure RNG turned off", "Manually terminating ClientAppActor",
                     "the ServerApp raised"):
            assert line in log
        assert flwr.handlers[-1] is console and console.level == logging.NOTSET
        flwr.warning("after the run")
        assert "after the run" in capfd.readouterr().err
    finally:
        flwr.removeHandler(console)
        flwr.setLevel(level)


def test_a_fresh_run_starts_its_log_anew_and_a_resumed_one_appends(tmp_path):
    for resume, text in ((False, "first"), (True, "second")):
        with to_run_log(tmp_path, resume=resume):
            logging.getLogger("flwr").error(text)
    with to_run_log(tmp_path, resume=True):
        pass
    assert [line.split()[-1] for line in (tmp_path / LOG_FILE).read_text().splitlines()] == [
        "first", "second"]
    with to_run_log(tmp_path):
        pass
    assert (tmp_path / LOG_FILE).read_text() == ""
