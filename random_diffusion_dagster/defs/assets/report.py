"""`diffusion_report`: a per-model summary of every result and a contact sheet."""

import dagster as dg

from ...engine.images import thumbnail_data_uri
from ...engine.report import INLINE_SHEET_BOX, SUMMARY_COLUMNS, Report, build_report
from ..asset_keys import DIFFUSED_IMAGE_KEY
from ..metadata import table
from ..partitions import images_partitions
from ..resources import DatasetResource

# summary.csv's columns as the UI's table names them: (name, type, meaning). Shorter than the file's, because
# Dagster's table neither scrolls nor keeps a cell on one line: wide headers squeeze model names into wrapping.
SUMMARY_TABLE = {
    "model": ("model", "string", "The catalog entry's name."),
    "images": ("images", "int", "Its results found."),
    "mean_inference_s": ("mean_s", "float", "Mean seconds of inference per image (summary.csv: mean_inference_s)."),
    "p95_inference_s": ("p95_s", "float", "95th percentile of those seconds (summary.csv: p95_inference_s)."),
    "peak_vram_allocated_mb": (
        "vram_alloc_mb",
        "float",
        "Peak GPU memory held by tensors, MiB (summary.csv: peak_vram_allocated_mb).",
    ),
    "peak_vram_reserved_mb": (
        "vram_reserved_mb",
        "float",
        "Peak GPU memory reserved by torch, MiB: the figure that runs out (summary.csv: peak_vram_reserved_mb).",
    ),
    "peak_rss_mb": ("rss_mb", "float", "Peak memory of the process, MiB (summary.csv: peak_rss_mb)."),
    "failures": ("failures", "int", "Its images without a current result."),
    "gate_failures": (
        "gate_failures",
        "int",
        "Its results kept although every attempt failed a quality gate (summary.csv: gate_failures).",
    ),
}

# Images made, or images failed: a run whose every image failed updates nothing, yet it changes the report's
# failures and leaves the checks it carried unevaluated ("Execution failed").
DEPS_UPDATED_OR_FAILED = dg.AutomationCondition.any_deps_updated() | dg.AutomationCondition.any_deps_match(
    dg.AutomationCondition.execution_failed().newly_true()
)
# Refresh after diffused images change or fail, but (unlike `eager()`) do not wait for every
# partition: one image that keeps failing must not block the report forever.
REPORT_AUTOMATION = (
    DEPS_UPDATED_OR_FAILED.since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("after diffused images update or fail")


def _summary_table(summary) -> dg.TableMetadataValue:
    """The summary under SUMMARY_TABLE's names, less the columns with no value at all (GPU memory on a CPU run)."""
    shown = [column for column in SUMMARY_COLUMNS if summary[column].notna().any()]
    names = {column: SUMMARY_TABLE[column][0] for column in shown}
    rows = [{names[column]: row[column] for column in shown} for row in summary.to_dict("records")]
    records = table(rows, {names[column]: SUMMARY_TABLE[column][1] for column in shown}).records
    columns = [dg.TableColumn(*SUMMARY_TABLE[column]) for column in shown]
    return dg.MetadataValue.table(records, schema=dg.TableSchema(columns=columns))


def _contact_sheet_markdown(report: Report) -> str:
    """The inline sheet and a line on what else the contact sheet file shows: Dagster's dialog for it must fit a
    window (engine.report.inline_sheet)."""
    picture = f"![contact sheet]({thumbnail_data_uri(report.inline_sheet, size=max(INLINE_SHEET_BOX))})"
    shown, total, in_file = report.inline_count, report.image_count, report.contact_sheet_count
    where = f"contact_sheet_path (`{report.contact_sheet_path}`)"
    if shown == total:
        return f"{picture}\n\nEach source beside its result; {where} captions them with prompt, model and seed."
    first = f" (the first {in_file})" if in_file < total else ""
    return (
        f"{picture}\n\nThe first {shown} of {total} results, each source beside its result; {where} shows "
        f"{in_file - shown} more{first}, captioned with prompt, model and seed."
    )


@dg.asset(
    deps=[DIFFUSED_IMAGE_KEY],
    automation_condition=REPORT_AUTOMATION,
    group_name="diffusion",
    description="Per-model summary of every diffused image and a contact sheet of sources beside results.",
)
def diffusion_report(context: dg.AssetExecutionContext, dataset: DatasetResource) -> dg.MaterializeResult:
    keys = context.instance.get_dynamic_partitions(images_partitions.name)
    report = build_report(dataset.output_dir, dataset.source_paths(keys), dataset.images_dir)
    metadata = {
        "images": report.image_count,
        "failures": report.failure_count,
        "summary": _summary_table(report.summary),
        "contact_sheet_path": dg.MetadataValue.path(str(report.contact_sheet_path)),
        "summary_csv": dg.MetadataValue.path(str(report.summary_csv_path)),
    }
    if report.inline_sheet is not None:
        metadata["contact_sheet"] = dg.MetadataValue.md(_contact_sheet_markdown(report))
    if report.failure_count:
        failed = report.failures.to_dict("records")
        metadata["failed_images"] = table(failed, {"key": "string", "model": "string", "error": "string"})
    metadata["gate_failures"] = len(report.quality_failures)
    if len(report.quality_failures):
        columns = {"key": "string", "model": "string", "file": "string", "attempts": "int", "reason": "string"}
        metadata["failed_quality_gates"] = table(report.quality_failures.to_dict("records"), columns)
    return dg.MaterializeResult(metadata=metadata)
