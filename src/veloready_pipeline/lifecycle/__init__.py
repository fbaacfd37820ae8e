"""One model lifecycle: register, review, roll out, export and publish.

The modules form a downward import chain (each imports only the ones below it)::

    registry   log runs, register passing versions, decide the champion
    review     challenger review (auto or by a person)
    rollout    staged rollout, promotion, rollback
    publish    export registered versions, write signed OTA manifests
    store      MLflow set-up, names, the aliases and every tag name (+ champion moves)
    manifests  export records and the entries/rules a manifest carries (no MLflow)
    convert    the Core ML/ONNX conversion jobs, here or in worker processes (no MLflow)

This file imports nothing, so the conversion worker processes stay light.
"""
