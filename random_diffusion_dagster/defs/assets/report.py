"""`diffusion_report`: a per-model summary of every result and a contact sheet."""

import dagster as dg

from ...engine.images import thumbnail_data_uri
from ...engine.report import SUMMARY_COLUMNS, build_report
from ..metadata import table
from ..partitions import images_partitions
from ..resources import DatasetResource
from .diffused_image import diffused_image

SUMMARY_TYPES = {
    column: {"model": "string", "images": "int", "failures": "int"}.get(column, "float") for column in SUMMARY_COLUMNS
}

# Refresh after diffused images change, but (unlike `eager()`) do not wait for every
# partition: one image that keeps failing must not block the report forever.
REPORT_AUTOMATION = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("after diffused images update")


def _measured_columns(summary) -> dict[str, str]:
    """The summary's columns minus those with no value at all (GPU memory on a CPU run)."""
    return {column: kind for column, kind in SUMMARY_TYPES.items() if summary[column].notna().any()}


@dg.asset(
    deps=[diffused_image],
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
        "summary": table(report.summary.to_dict("records"), _measured_columns(report.summary)),
        "contact_sheet_path": dg.MetadataValue.path(str(report.contact_sheet_path)),
        "summary_csv": dg.MetadataValue.path(str(report.summary_csv_path)),
    }
    if report.contact_sheet is not None:
        metadata["contact_sheet"] = dg.MetadataValue.md(
            f"![contact sheet]({thumbnail_data_uri(report.contact_sheet, size=1024)})"
        )
    if report.failure_count:
        failed = report.failures.to_dict("records")
        metadata["failed_images"] = table(failed, {"key": "string", "model": "string", "error": "string"})
    return dg.MaterializeResult(metadata=metadata)
