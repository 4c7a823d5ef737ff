"""Training components: one stage of the model, resumable. `train_stage` trains in the step's own pod, on its
node's GPUs (torchrun when more than one); `train_stage_across_nodes` launches a PyTorchJob over several pods and
waits for it (pipelines compiled with `--num-nodes N`). Both write the same outputs."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.images import CPU_IMAGE, CUDA_IMAGE, project_component


@project_component(CUDA_IMAGE)
def train_stage(stage: int, pairs: Input[Dataset], params: dict, profile: str, track: bool, workspace: str,
                run_id: str, nproc_per_node: int, model: Output[Model], metrics: Output[Metrics],
                samples: Output[HTML], init: Input[Model] = None, replay: Input[Dataset] = None):
    """Train stage 1, 2 or 3 into the `model` folder (stages 2-3 start from `init`; stage 3 mixes `replay`'s
    light-stage pairs into its batches at the profile's `replay_fraction`).

    Checkpoints and the latent cache go to `workspace/runs/<run_id>/stageN` (a volume on the cluster), so a retried
    task resumes where the failed one stopped; with an empty `workspace` they live in a temporary folder. The final
    loss and throughput are logged as metrics, the last validation grid as an HTML page.
    """
    from components.job import run_distributed, run_job, stage_paths, train_argv, write_training_outputs

    paths = stage_paths(workspace, run_id, stage)
    argv = train_argv(stage, pairs.path, model.path, paths, init.path if init is not None else None,
                      replay.path if replay is not None else None)
    if nproc_per_node > 1:
        run_distributed(argv, params, profile, track, nproc_per_node)
    else:
        run_job(argv, params, profile, track)
    write_training_outputs(stage, paths, model, metrics, samples)


@project_component(CPU_IMAGE)
def train_stage_across_nodes(stage: int, pairs: Input[Dataset], params: dict, profile: str, track: bool,
                             workspace: str, run_id: str, num_nodes: int, nproc_per_node: int, gpus: bool,
                             image: str, pod_cpu_request: str, pod_cpu_limit: str, pod_memory_request: str,
                             pod_memory_limit: str,
                             model: Output[Model], metrics: Output[Metrics], samples: Output[HTML],
                             init: Input[Model] = None, replay: Input[Dataset] = None):
    """The same stage as `train_stage`, run by a PyTorchJob of `num_nodes` pods × `nproc_per_node` ranks in
    `image`, each pod with the `pod_*` CPU and memory requests and limits (Kubernetes quantities; not named
    `cpu_request`...: kfp 2.17 writes the step's own resource settings into inputs of those names). Inputs, params
    and checkpoints go to the shared workspace volume (the pods see only that); the job is named after the run and
    stage, so a retried step follows the job it started instead of starting another."""
    import shutil

    from components import pytorchjob
    from components.job import job_argv, params_text, stage_paths, train_argv, write_training_outputs

    paths = stage_paths(workspace, run_id, stage)
    inputs = paths.run_dir / "inputs"
    shutil.copytree(pairs.path, inputs / "pairs", dirs_exist_ok=True)
    if init is not None:
        shutil.copytree(init.path, inputs / "init", dirs_exist_ok=True)
    if replay is not None:
        shutil.copytree(replay.path, inputs / "replay", dirs_exist_ok=True)
    params_path = paths.run_dir / "params.yaml"
    params_path.write_text(params_text(params, profile))
    out = paths.run_dir / "model"
    argv = job_argv(train_argv(stage, str(inputs / "pairs"), str(out), paths,
                               str(inputs / "init") if init is not None else None,
                               str(inputs / "replay") if replay is not None else None), params_path, profile, track)
    api, namespace = pytorchjob.kubernetes_api()
    job = pytorchjob.TrainJob(name=f"relightful-{run_id[:40].lower()}-stage{stage}".replace("_", "-"),
                              namespace=namespace, image=image, args=["-m", "relightful.cli", *argv],
                              num_nodes=num_nodes, nproc_per_node=nproc_per_node, gpus=gpus, workspace=workspace,
                              cpu_request=pod_cpu_request, cpu_limit=pod_cpu_limit,
                              memory_request=pod_memory_request, memory_limit=pod_memory_limit)
    pytorchjob.run(api, pytorchjob.manifest(job))
    shutil.copytree(out, model.path, dirs_exist_ok=True)
    write_training_outputs(stage, paths, model, metrics, samples)
