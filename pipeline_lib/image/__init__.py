"""Images: the image modality (pipeline_lib.image.modality) and everything only images need: files and
their checks, torchvision/timm backbones, fine-tuning networks, generators, augmentation, CLIP."""
