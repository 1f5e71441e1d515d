"""The calibration corpus: what a gradinspect warning must mean.

A warning must mean "this training is harmed". The corpus holds both sides of that sentence:

- ``healthy``: small classifiers of every family people write (MLPs with relu, tanh, sigmoid and
  selu, CNNs, LSTM/GRU, a Transformer block, with and without BatchNormalization and Dropout,
  in Keras 3 and in Keras 2 through ``tf_keras``), each trained until it reaches a stated test
  accuracy and saved at initialisation and after training: no file may get a warning;
- ``sick``: models made sick the way real runs get sick (a learning rate that diverges, a bias
  that kills a layer, unscaled pixels, a loss that does not fit the output ...), each with the
  cause gradinspect must name as its root, and a check, independent of gradinspect, that the
  pathology is really in the saved file.

``datasets`` holds the data (scikit-learn's bundled sets: nothing is downloaded), ``builders``
the model builders both sides share, ``evaluate`` judges every file and prints the table
(``python tests/calibration/evaluate.py``); ``tests/test_calibration.py`` is the fast part
that runs in CI.
"""
