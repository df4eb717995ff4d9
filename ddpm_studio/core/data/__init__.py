"""Images in: folders of images, the decoded-dataset cache, the batches of every step, the demo dataset and picture."""
