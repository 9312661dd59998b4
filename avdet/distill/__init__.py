"""Single-image distillation: patch sets from one image and knowledge distillation."""
