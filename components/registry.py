"""The retrain decision: the step every training step of the pipeline waits for (and is conditioned on)."""

from kfp.dsl import Dataset, Input

from components.images import CPU_IMAGE, project_component


@project_component(CPU_IMAGE)
def retrain_check(pairs: Input[Dataset], track: bool, force: bool, model_name: str, alias: str) -> str:
    """`relightful retrain-check` of the light-stage pairs against `model_name@alias` (the stage-1 model of the
    champion, whose data_version tag is the pairs it was trained on). Returns "retrain" (the data changed, no such
    model yet, `force`, or tracking off) or "up-to-date"; fails when the registry cannot be read."""
    from components.job import retrain_decision

    return retrain_decision(pairs.path, model_name, alias, track, force)
