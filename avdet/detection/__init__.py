"""The torchvision Faster R-CNN detector built from config, its data, training and inference."""
