"""COCO mAP, VGG-SS localisation (cIoU, AUC, pointing) and clustering (NMI, ARI, accuracy)."""
