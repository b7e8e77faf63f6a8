"""KServe's first sklearn example ("Deploy Scikit-learn models with InferenceService"), unmodified
but for a local storageUri: the model folder next to the YAML file."""

SKLEARN_IRIS_LOCAL = """\
apiVersion: "serving.kserve.io/v1beta1"
kind: "InferenceService"
metadata:
  name: "sklearn-iris"
spec:
  predictor:
    model:
      modelFormat:
        name: sklearn
      storageUri: "./model"
"""
