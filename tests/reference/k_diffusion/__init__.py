"""k-diffusion's sampler code (MIT), the reference the sampler tests compare against."""
