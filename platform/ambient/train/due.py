"""What falls on an optimizer step: the training loop's every-N checks, in one place."""

from __future__ import annotations

from dataclasses import dataclass

from .config import TrainSection, ValidationSection


@dataclass(frozen=True)
class Due:
    """The actions due after one optimizer step. The last step logs, samples and checkpoints."""

    log: bool  # print a progress line
    sample: bool  # write a sample grid of the validation prompts
    checkpoint: bool  # save a checkpoint (reported with it)
    validate: bool  # measure the held-out loss

    @property
    def report(self) -> bool:
        """A report to Ray Train (and a history entry) closes the logging window."""
        return self.log or self.sample or self.checkpoint

    @classmethod
    def at(
        cls,
        step: int,
        train: TrainSection,
        validation: ValidationSection,
        *,
        has_holdout: bool,
        validated: bool,
    ) -> Due:
        """``validated``: a held-out loss was measured before (in this run or before its checkpoint)."""
        last = step == train.max_steps
        log = step % train.log_every == 0 or last
        sample = step % validation.every_steps == 0 or last
        checkpoint = step % train.checkpoint_every == 0 or last
        # Ray Tune checks its metric (val_ambient_loss) in every report: each report carries the last
        # held-out loss, so the first report of a run measures one even between validation steps.
        first_report = (log or sample or checkpoint) and not validated
        validate = has_holdout and (sample or first_report)
        return cls(log=log, sample=sample, checkpoint=checkpoint, validate=validate)
