"""The backbone-agnostic PersonalVideo engine: adapter, sampler, identity loss, tuning,
generation. It talks to backbones and encoders only through `pvcli.contracts`."""
