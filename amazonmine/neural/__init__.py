"""The network and everything that runs it: the only folder that imports TensorFlow or Keras.

Model, tf.data datasets, what a fold's fit is made of (metric, loss, optimizer, callbacks), device and cluster set-up,
fine-tuning, and the predictor that turns chips into probabilities. Each imports TensorFlow inside its functions
(or only when it is itself imported lazily), so importing the package stays cheap.
"""
