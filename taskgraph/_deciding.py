"""Whether a ready task runs: the up-to-date check and what follows from it
(skipped, its stored result restored, failed when it cannot be checked), the
dry run, and tasks another process on the workspace is running (claims).

Part of the scheduler (a base class of ``Scheduler``, on ``RunEnding``; the
scheduler owns all of the state named here, and nothing else calls these).
Imports ``_decide``, ``_ending``, ``_ledger`` (``UntrustedResultError``) and
``_task`` (types).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from taskgraph._decide import Decision, Reason, decide
from taskgraph._ending import RunEnding
from taskgraph._ledger import UntrustedResultError

if TYPE_CHECKING:
    from taskgraph._task import Task

LOGGER = logging.getLogger("taskgraph.Task")


class Deciding(RunEnding):
    """The scheduler's methods that decide ready tasks and claim them."""

    # The scheduler's state (see Scheduler.__init__), beyond RunEnding's.
    _unnotified: list[Task]
    _threaded: bool
    _to_wake: list[Task]

    # The scheduler's own methods, which these call.
    def _start(self, task: Task, decision: Decision) -> None:
        raise NotImplementedError

    def _release(self, finished: list[Task]) -> None:
        raise NotImplementedError

    def _wake(self, finished: Sequence[Task]) -> None:
        raise NotImplementedError

    def _decide(self, task: Task) -> Decision | None:
        """Decide one ready task; finish it if it is up to date. Returns the
        decision of a task that must run, or None."""
        try:
            decision = decide(task, self._ledger, self._ledger)
        except Exception as error:
            task._state = "failed"
            task._error = error
            LOGGER.error("task %r could not be checked: %s: %.500s", task.task_name, type(error).__name__, error)
            self._task_failed(task, error)
            self._finish([task])
            return None
        if not decision.run and task._store_result:
            decision = self._load_result(task, decision)
        task._reasons = decision.reasons
        task._had_record = decision.record is not None
        self._ledger.record_decision(
            task._identity.record_key, task.task_name, decision.run,
            [reason.as_dict() for reason in decision.reasons] if decision.reasons else [],
        )
        if decision.run:
            return decision
        task._state = "skipped"
        LOGGER.debug("task %r is up to date: skipped", task.task_name)
        # Dependents may go ahead at once; waiters are woken with the commit
        # (inline at once: see _threaded).
        self._release([task])
        self._unnotified.append(task)
        if not self._threaded:
            self._to_wake.append(task)
        return None

    def _load_result(self, task: Task, decision: Decision) -> Decision:
        """Give an up-to-date task its stored result; if the result fails its
        authentication check it is not unpickled and the task runs again."""
        try:
            task._result = self._ledger.load_result(task._identity.record_key)
        except UntrustedResultError as error:
            LOGGER.warning("task %r: %s. It runs again.", task.task_name, error)
            reason = Reason("result_untrusted", f"its stored result was refused: {error}")
            return Decision(True, (reason,), decision.inputs, decision.record)
        return decision

    def _claim_and_start(self, starting: list[tuple[Task, Decision]]) -> None:
        """Start the tasks of ``starting`` that this process can claim."""
        assert self._claims is not None
        claimed = []
        for task, decision in starting:
            if self._claims.claim(task._identity.record_key):
                claimed.append((task, decision))
            else:
                # Another process is running this very task: wait for it,
                # then decide again (it will most likely be up to date).
                LOGGER.info("task %r is being run by another process on this workspace; waiting for it",
                            task.task_name)
                self._elsewhere[task.task_id] = task
        # Another process may have recorded a task between its decision
        # (perhaps from the ledger's snapshot) and its claim: then it is
        # decided again, which will most likely skip it. If nothing else has
        # written the ledger since it was opened (one check for the round,
        # after the claims), nothing has.
        recheck = bool(claimed) and self._ledger.written_elsewhere()
        for task, decision in claimed:
            if recheck and self._ledger.lookup(task._identity.record_key, fresh=True) != decision.record:
                again = self._decide(task)
                if again is None:
                    continue  # up to date now; its claim goes with its notification
                decision = again
            self._start(task, decision)

    def _recheck_elsewhere(self) -> None:
        """Tasks another process was running: back to the ready queue once it
        has finished (or died)."""
        if not self._elsewhere or self._failure is not None:
            return
        assert self._claims is not None
        for task in list(self._elsewhere.values()):
            if not self._claims.held_elsewhere(task._identity.record_key):
                del self._elsewhere[task.task_id]
                self._ready.push(task)

    def _plan(self, task: Task) -> None:
        """Dry run: decide, record nothing, run nothing."""
        upstream = [dep for dep in task._dependencies if dep._state == "would-run"]
        if upstream:
            task._reasons = tuple(
                Reason("dependency_would_run", f"dependency {dep.task_name!r} would run")
                for dep in upstream
            )
        else:
            decision = decide(task, self._ledger, self._ledger)
            if not decision.run and task._store_result:
                decision = self._load_result(task, decision)
            task._reasons = decision.reasons
        task._state = "would-run" if task._reasons else "skipped"
        self._finish([task])


__all__ = ["Deciding"]
