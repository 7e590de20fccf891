"""Image-to-image GAN baselines of the paper's Table 1, trained on the same slices as the latent models.

CTP (B, 15, H, W) -> [DWI, ADC] (B, 2, H, W), both in [-1, 1] (docs/data.md), in one forward pass:

- :class:`~ldm.models.gan.pix2pix.Pix2Pix` (Isola et al., CVPR 2017): U-Net generator, conditional
  70 x 70 PatchGAN, cGAN + 100 x L1.
- :class:`~ldm.models.gan.cycle_gan.CycleGAN` (Zhu et al., ICCV 2017): ResNet generators both ways,
  LSGAN, cycle weight 10, image pools of 50, trained on unpaired slices.
- :class:`~ldm.models.gan.paired_cycle_gan.PairedCycleGAN` (Chang et al., CVPR 2018): asymmetric
  generators, a discriminator of (CTP, MRI) pairs that uses the pairing, cycle terms both ways.

Networks: ``unet_generator.py``, ``resnet_generator.py``, ``patchgan.py``; losses:
``adversarial_loss.py``, ``cycle_loss.py``; the history of fakes: ``image_pool.py``; the shared
Lightning plumbing (inputs, checks, optimisers, inference interface): ``translation_gan.py``.
docs/baselines.md describes them and how they differ from the original releases.
"""
