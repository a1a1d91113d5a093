"""`run --dry-run`: the plan a run would follow, from the manifest and the root alone.

Nothing is started or written: no Ray, no lease, no healing of the index, no model. It plans
with the same rules and the same verified state as `run`, so its counts are the run's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pusa_batch.engine.config import RunConfig
from pusa_batch.engine.plan import PlanCounts, Rules, count_plan
from pusa_batch.manifest.read import validate_manifest
from pusa_batch.pipelines.spec import load_pipeline_spec
from pusa_batch.store.store import Store

FIRST_IDS = 10


@dataclass(frozen=True)
class RunPreview:
    output: str
    manifest: str
    plan: PlanCounts
    would_stop: bool  # changed items without --regenerate-changed stop the real run
    extra_note: str | None = None  # "carried as extra metadata: ..." (the manifest's own columns)

    def to_dict(self) -> dict:
        plan = dataclasses.asdict(self.plan)
        plan["changed_ids"] = list(plan["changed_ids"])[:FIRST_IDS]
        return {
            "output": self.output,
            "manifest": self.manifest,
            "would_stop_on_changed": self.would_stop,
            **plan,
            "todo_ids": list(plan["todo_ids"]),
        }


def preview_run(config: RunConfig, first_ids: int = FIRST_IDS) -> RunPreview:
    """Validate the manifest and plan it against the root, as `run` would, changing nothing."""
    spec = load_pipeline_spec(config.pipeline)
    report = validate_manifest(config.manifest, spec, strict_columns=config.strict_columns)
    report.raise_for_problems(config.manifest)
    store = Store(config.output, dict(config.storage_options))
    state = store.state(verify=not config.trust_index)
    rules = Rules(config.retry_failed, config.regenerate_changed)
    plan = count_plan(config.manifest, spec, state, rules, keep_todo_ids=first_ids)
    return RunPreview(
        output=store.url,
        manifest=config.manifest,
        plan=plan,
        would_stop=bool(plan.changed and not config.regenerate_changed),
        extra_note=report.extra_note(),
    )


def format_preview(preview: RunPreview) -> str:
    plan = preview.plan
    lines = [
        f"dry run: {plan.total} item(s) in {preview.manifest} against {preview.output}",
        f"  done {plan.done}, pending {plan.pending}, changed {plan.changed}, "
        f"failed before {plan.failed}, damaged {plan.damaged}",
    ]
    if preview.would_stop:
        shown = ", ".join(plan.changed_ids[:FIRST_IDS])
        lines.append(
            f"  the run would stop: {plan.changed} done item(s) changed ({shown}); "
            "add --regenerate-changed to replace them"
        )
    if plan.failed_before:
        lines.append(f"  {plan.failed_before} failed item(s) skipped; --retry-failed runs them")
    if preview.extra_note:
        lines.append(f"  {preview.extra_note}")
    if plan.todo:
        more = (
            f" ... and {plan.todo - len(plan.todo_ids)} more"
            if plan.todo > len(plan.todo_ids)
            else ""
        )
        lines.append(f"  would generate {plan.todo}: {', '.join(plan.todo_ids)}{more}")
    else:
        lines.append("  nothing to generate")
    lines.append("Nothing was started or written.")
    return "\n".join(lines)
