"""The Open Inference Protocol (V2) as Triton's and KServe's clients speak it: REST with JSON or binary tensors
(``app.routes.v2``) and gRPC (``grpc_service``), both through ``protocol``, the one place that knows the model's
tensors, so every transport gives the same answer."""
