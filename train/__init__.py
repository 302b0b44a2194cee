"""medclf training: folder-per-class data to a Keras model, with the metrics clinicians read."""
