"""generate.sampler: the noise schedulers that sample a trained model (not class re-sampling, not MaskSampler),
named without importing diffusers; ``pipeline.make_scheduler`` builds one matching the training schedule."""
from ..registry import Registry

SCHEDULERS = Registry("sampler (generate.sampler)")
SCHEDULERS.register("ddpm", "diffusers:DDPMScheduler")
SCHEDULERS.register("ddim", "diffusers:DDIMScheduler")
SCHEDULERS.register("dpmsolver++", "diffusers:DPMSolverMultistepScheduler")
