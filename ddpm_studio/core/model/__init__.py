"""The network and the model folder: the U-Net and its presets, saving and loading, checks on foreign folders,
import."""
