"""The Kubernetes deployment, checked as far as a machine without a cluster allows.

The shipped instance config is validated by dagster-k8s's own config schema, and the Job
manifests that dagster-k8s renders for each step are built from the run launcher's config
and the assets' tags, as its step handler builds them.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import validate_config
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config

from random_diffusion_dagster.definitions import defs
from random_diffusion_dagster.defs.assets import diffused_image

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "k8s"
# A kubeconfig for a cluster that is never contacted: the launcher only needs one to be constructed.
KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    "current-context": "test",
    "clusters": [{"name": "test", "cluster": {"server": "https://127.0.0.1:6443"}}],
    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    "users": [{"name": "test", "user": {"token": "unused"}}],
}


def test_run_launcher_config_passes_dagster_k8s_schema():
    launcher = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    result = validate_config(K8sRunLauncher.config_type(), launcher["config"])
    assert result.success, [error.message for error in result.errors]


def test_diffusion_step_job_asks_for_one_gpu_on_a_gpu_node():
    tags = diffused_image.op.tags  # Dagster stores the dict tag as JSON, as dagster-k8s reads it
    user_config = get_user_defined_k8s_config(tags)
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(
            job_image="registry.example.com/random-diffusion-dagster:latest", dagster_home="/opt/dagster/dagster_home"
        ),
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-diffused-image",
        user_defined_k8s_config=user_config,
    )
    pod = job.spec.template.spec
    assert pod.containers[0].resources.limits == {"nvidia.com/gpu": "1"}
    assert pod.node_selector == {"nvidia.com/gpu.present": "true"}
    assert pod.tolerations[0].key == "nvidia.com/gpu"
    assert tags["dagster-celery/queue"] == "gpu"


def test_k8s_executor_is_selected_by_environment():
    code = "from random_diffusion_dagster.definitions import defs; print(defs.executor.name)"
    env = {**os.environ, "RANDOM_DIFFUSION_EXECUTOR": "k8s", "RANDOM_DIFFUSION_STEP_STORAGE": "/data/step-values"}
    completed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert completed.stdout.strip() == "k8s"


def test_k8s_executor_without_step_storage_refuses_to_load_naming_the_variable():
    code = "import random_diffusion_dagster.definitions"
    env = {key: value for key, value in os.environ.items() if key != "RANDOM_DIFFUSION_STEP_STORAGE"}
    completed = subprocess.run(
        [sys.executable, "-c", code], env={**env, "RANDOM_DIFFUSION_EXECUTOR": "k8s"}, capture_output=True, text=True
    )
    assert completed.returncode != 0
    assert "set RANDOM_DIFFUSION_STEP_STORAGE to a folder or fsspec URL every worker reaches" in completed.stderr


def _launcher_from_instance_yaml() -> dict:
    return yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]["config"]


def _launcher_from_helm_values() -> dict:
    """The K8sRunLauncher config the Helm chart renders from values.yaml (helm/dagster/templates/helpers/
    instance/_run-launcher.tpl: envVars -> env_vars, envSecrets names -> env_secrets, volumes, volumeMounts)."""
    chart = yaml.safe_load((DEPLOY / "values.yaml").read_text())["runLauncher"]["config"]["k8sRunLauncher"]
    return {
        "service_account_name": "dagster",
        "instance_config_map": "dagster-instance",
        "dagster_home": "/opt/dagster/dagster_home",
        "job_namespace": chart["jobNamespace"],
        "image_pull_policy": chart["imagePullPolicy"],
        "env_vars": chart.get("envVars", []),
        "env_secrets": [secret["name"] for secret in chart["envSecrets"]],
        "volumes": chart["volumes"],
        "volume_mounts": chart["volumeMounts"],
    }


def _step_pods(launcher_config: dict, kubeconfig: Path) -> dict:
    """Each diffuse_images step's pod spec, built as dagster-k8s's step handler (K8sStepHandler) builds it."""
    config = {**launcher_config, "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
    launcher = K8sRunLauncher(**config)
    run = dg.DagsterRun(job_name="diffuse_images")
    pods = {}
    for node in defs.resolve_job_def("diffuse_images").graph.nodes:
        context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=False).merge(
            K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(node.tags))
        )
        job = construct_dagster_k8s_job(
            context.get_k8s_job_config("registry.example.com/random-diffusion-dagster:latest", launcher),
            args=["dagster", "api", "execute_step"],
            job_name=f"dagster-step-{node.name.replace('_', '-')}",
            user_defined_k8s_config=context.run_k8s_config,
            env_vars=[{"name": "DAGSTER_RUN_STEP_KEY", "value": node.name}],
        )
        pods[node.name] = job.spec.template.spec
    return pods


def _step_storage_seen_by(env: dict[str, str]) -> dict:
    """Load the definitions as a step pod does, with its environment: the IO manager's folder, and the
    IO manager key of every output of the job's steps."""
    code = (
        "import json\nfrom random_diffusion_dagster.definitions import defs\n"
        "job = defs.resolve_job_def('diffuse_images')\n"
        "keys = {n.name: sorted({o.io_manager_key for o in n.definition.output_defs}) for n in job.graph.nodes}\n"
        "print(json.dumps({'base_dir': defs.resources['io_manager'].base_dir, 'keys': keys}))"
    )
    clean = {key: value for key, value in os.environ.items() if not key.startswith("RANDOM_DIFFUSION_")}
    completed = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "launcher_config", [_launcher_from_instance_yaml, _launcher_from_helm_values], ids=["instance-yaml", "helm-values"]
)
def test_every_step_pod_mounts_the_shared_volume_its_step_storage_lies_on(launcher_config, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(KUBECONFIG))
    pods = _step_pods(launcher_config(), kubeconfig)
    assert {"prompt_list", "model_catalog", "diffused_image"} <= set(pods)
    seen = {}
    for step, pod in pods.items():
        (container,) = pod.containers
        env = {var.name: var.value for var in container.env if var.value is not None}
        assert env.get("RANDOM_DIFFUSION_EXECUTOR") == "k8s", step
        key = json.dumps({k: v for k, v in env.items() if k != "DAGSTER_RUN_STEP_KEY"}, sort_keys=True)
        seen[key] = seen.get(key) or _step_storage_seen_by(env)
        storage = seen[key]
        assert storage["keys"][step] == ["io_manager"], storage["keys"]  # every output goes through step storage
        claims = {
            volume.name: volume.persistent_volume_claim.claim_name
            for volume in pod.volumes
            if volume.persistent_volume_claim
        }
        mounts = [m for m in container.volume_mounts if Path(storage["base_dir"]).is_relative_to(m.mount_path)]
        assert mounts and mounts[0].name in claims, (step, storage["base_dir"], container.volume_mounts)
        # the same claim the outputs go to, and nothing of the pod's own DAGSTER_HOME
        assert Path(env["RANDOM_DIFFUSION_OUTPUT_DIR"]).is_relative_to(mounts[0].mount_path)
        assert not Path(storage["base_dir"]).is_relative_to("/opt/dagster/dagster_home")
    assert len(seen) == 1  # one step storage for every step


def test_helm_values_point_the_code_location_at_the_definitions():
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == [
        "--module-name",
        "random_diffusion_dagster.definitions",
        "--attribute",
        "defs",
    ]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"


def test_helm_values_give_runs_the_same_environment_as_the_instance_yaml():
    assert _launcher_from_helm_values()["env_vars"] == _launcher_from_instance_yaml()["env_vars"]
    assert _launcher_from_helm_values()["image_pull_policy"] == _launcher_from_instance_yaml()["image_pull_policy"]


def test_helm_values_render_the_instance_yaml_gpu_pool_monitoring_and_retries():
    """What the chart writes into the instance ConfigMap from values.yaml (configmap-instance.yaml: runMonitoring,
    runRetries under dagsterDaemon; helpers/instance/_concurrency.tpl: top-level concurrency, only if enabled)."""
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    daemon, concurrency = values["dagsterDaemon"], values["concurrency"]
    assert concurrency["enabled"] is True
    rendered = {
        "concurrency": {
            "pools": {
                "granularity": concurrency["pools"]["granularity"],
                "default_limit": concurrency["pools"]["defaultLimit"],
            }
        },
        "run_monitoring": {
            "enabled": daemon["runMonitoring"]["enabled"],
            "start_timeout_seconds": daemon["runMonitoring"]["startTimeoutSeconds"],
            "poll_interval_seconds": daemon["runMonitoring"]["pollIntervalSeconds"],
        },
        "run_retries": {
            "enabled": daemon["runRetries"]["enabled"],
            "max_retries": daemon["runRetries"]["maxRetries"],
            "retry_on_asset_or_op_failure": daemon["runRetries"]["retryOnAssetOrOpFailure"],
        },
    }
    assert rendered == {key: instance[key] for key in rendered}
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    code_location = [f"{var['name']}={var['value']}" for var in deployment["env"]]
    assert code_location == _launcher_from_instance_yaml()["env_vars"]
