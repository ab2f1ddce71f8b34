"""What a finished pretraining run says about its stages: what `hpt pretrain` and `hpt run` print at the end."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hpt.pretrain.hierarchy import HierarchyResult


def stages_summary(result: HierarchyResult) -> str:
    """One line per stage (done or skipped, steps, wall time, images per second, backbone file), a line for an
    early stop and one for the guard's choice, and the run's total wall time."""
    lines = []
    for stage in result.stages:
        s = stage.summary
        status = "skipped (finished earlier)" if stage.skipped else "done"
        rate = f"{s['images_per_s']:.0f} img/s" if "images_per_s" in s else ""
        lines.append(f"{stage.name:>12}: {status:<26} {s.get('steps_done', 0):>7} steps "
                     f"{s.get('wall_time_s', 0):9.1f} s {rate:>12}  {stage.backbone_path}")
        if s.get("stopped_early"):
            stop = s["stopped_early"]
            lines.append(f"{'':>14}stopped at step {stop['step']} ({stop['steps_saved']} of the budget saved): "
                         f"{stop['reason']}")
        if s.get("guard"):
            guard = s["guard"]
            said = s.get("stopped_early") and s["stopped_early"]["reason"] == guard["reason"]
            lines.append(f"{'':>14}guard ({guard['signal']}): kept step {guard['kept_step']} "
                         f"({guard['kept_value']:.4f})" + ("" if said else f"; {guard['reason']}"))
    lines.append(f"total wall time {result.wall_time_s:.1f} s; backbones and logs in {result.out_dir}")
    return "\n".join(lines)
