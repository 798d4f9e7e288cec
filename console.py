"""What a person sees at the console's edges of a run: expected warnings quieted by message, the project's errors
as one line, and Ctrl+C / SIGTERM turned into a saved step and a line saying how to go on."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable

from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from errors import ProjectError


class _WithoutAdvert(logging.Filter):
    """Lightning's tip advertising a cloud logger on every run is not about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


_WITHOUT_ADVERT = _WithoutAdvert()


def quiet_expected_warnings() -> None:
    """Warnings expected in this project and nothing a user can act on, kept off the console narrowly, by message:
    MealV2's frozen teachers are in eval mode at the start of training by design (they ignore .train()); Lightning
    2.6's model summary cannot size bf16/fp16 mixed precision (only its MB estimate is off); Lightning's own use of a
    torch pytree API that torch deprecated; Lightning's tip advertising a cloud logger."""
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    warnings.filterwarnings("ignore", message=r"Precision \S+ is not supported by the model summary")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_WITHOUT_ADVERT)  # once: the same object


# Lightning's MisconfigurationException: one-line refusals such as accelerator 'gpu' without a GPU, max_epochs -2.
USER_ERRORS = (ProjectError, MisconfigurationException)


def user_error(error: BaseException):
    """The project's own one-line error inside jsonargparse's wrapping, if there is one."""
    while error is not None:
        if isinstance(error, USER_ERRORS):
            return error
        error = error.__cause__ or error.__context__
    return None


_interrupted = {"by": None, "previous": None}


def stop_on_interrupt_like_a_preemption() -> None:
    """During ``fit``, Ctrl+C (SIGINT) stops as SIGTERM does: the current step ends, ``last.ckpt`` is saved and the
    command exits non-zero saying how to resume. A second Ctrl+C stops at once."""
    if threading.current_thread() is not threading.main_thread():
        return

    def as_sigterm(signum, frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):  # Lightning's handler is not in place yet
            raise KeyboardInterrupt
        _interrupted["by"] = "SIGINT"
        os.kill(os.getpid(), signal.SIGTERM)

    _interrupted["previous"] = signal.signal(signal.SIGINT, as_sigterm)


def restore_interrupt_handler() -> None:
    """The Ctrl+C handler from before the fit, back in place (several commands in one process, as in the tests)."""
    if _interrupted["previous"] is not None:
        signal.signal(signal.SIGINT, _interrupted["previous"])
        _interrupted["previous"] = None


def one_line(error: BaseException) -> str:
    """The error's own message; a DataLoader worker's re-raise adds the worker's traceback, of which the last line is it."""
    message = str(error).strip()
    if message.startswith("Caught ") and "Original Traceback" in message:
        message = message.splitlines()[-1].split(": ", 1)[-1]
    return message


def preempted_line(error: SIGTERMException) -> str:
    """What a SIGTERM (or Ctrl+C) left behind, and how to go on."""
    path, step = getattr(error, "checkpoint", ("", 0))
    why = "SIGINT (Ctrl+C)" if _interrupted["by"] == "SIGINT" else "SIGTERM (pre-empted)"
    if not path:
        return f"error: stopped by {why} before the first checkpoint: run the same command again."
    return f"error: stopped by {why}: {path} holds step {step}; continue with the same command and --ckpt_path last."


def run_command(main: Callable[[], object]) -> None:
    """``main()`` as a command: the project's errors exit with one line; a stop by SIGTERM or Ctrl+C exits 143 / 130
    with the line saying where the run was saved (Lightning's own exit would be status 0: `fit && test` would go on)."""
    try:
        main()
    except USER_ERRORS as error:
        raise SystemExit(f"error: {one_line(error)}") from None
    except SIGTERMException as error:
        print(preempted_line(error), file=sys.stderr)
        sys.exit(128 + (signal.SIGINT if _interrupted["by"] == "SIGINT" else signal.SIGTERM))


def table_lines(header: str, rows: list[list], left: int = 1) -> list[str]:
    """A Markdown table (``header``: "a | b | c"): its first ``left`` columns aligned left, the others right."""
    rule = "|" + "---|" * left + "---:|" * (header.count("|") + 1 - left)
    return [f"| {header} |", rule, *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)]
