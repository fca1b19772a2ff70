"""The Kubernetes deployment, checked as far as a machine without a cluster allows.

The shipped instance config is validated by dagster-k8s's own config schema, and the Job
manifest that dagster-k8s renders for the diffusion step is built from the asset's tags.
"""

import os
import subprocess
import sys
from pathlib import Path

import yaml
from dagster._config import validate_config
from dagster_k8s import K8sRunLauncher
from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config

from random_diffusion_dagster.assets import diffused_image

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "k8s"


def test_run_launcher_config_passes_dagster_k8s_schema():
    launcher = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    result = validate_config(K8sRunLauncher.config_type(), launcher["config"])
    assert result.success, [error.message for error in result.errors]


def test_diffusion_step_job_asks_for_one_gpu_on_a_gpu_node():
    tags = diffused_image.op.tags  # Dagster stores the dict tag as JSON, as dagster-k8s reads it
    user_config = get_user_defined_k8s_config(tags)
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image="registry.example.com/random-diffusion-dagster:latest", dagster_home="/opt/dagster/dagster_home"),
        args=["dagster", "api", "execute_step"], job_name="dagster-step-diffused-image", user_defined_k8s_config=user_config,
    )
    pod = job.spec.template.spec
    assert pod.containers[0].resources.limits == {"nvidia.com/gpu": "1"}
    assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
    assert pod.tolerations[0].key == "nvidia.com/gpu"
    assert tags["dagster-celery/queue"] == "gpu"


def test_k8s_executor_is_selected_by_environment():
    code = "from random_diffusion_dagster.definitions import defs; print(defs.executor.name)"
    env = {**os.environ, "RANDOM_DIFFUSION_EXECUTOR": "k8s"}
    completed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "k8s"


def test_helm_values_point_the_code_location_at_the_definitions():
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "random_diffusion_dagster.definitions", "--attribute", "defs"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
