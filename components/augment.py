"""Augmentation component: stage-3 pairs synthesised from natural portraits with the stage-2 model."""

from kfp.dsl import Dataset, Input, Model, Output

from components.images import CUDA_IMAGE, project_component


@project_component(CUDA_IMAGE)
def augment(natural: Input[Dataset], stage2: Input[Model], params: dict, profile: str, track: bool,
            natural_pairs: Output[Dataset]):
    """Relight each portrait with the stage-2 model towards other backgrounds: the natural pairs of stage 3."""
    import os

    from components.job import run_job

    run_job(["augment", "--portraits", os.path.join(natural.path, "portraits"),
             "--backgrounds", os.path.join(natural.path, "backgrounds"), "--model", stage2.path,
             "--out", natural_pairs.path], params, profile, track)
