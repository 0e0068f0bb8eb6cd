"""What every stage shares: config, chips and labels, metrics, decisions, the run folder, model bundles, atomic files,
logging, errors. It never imports a stage, the model's folder, or TensorFlow.
"""
