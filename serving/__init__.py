"""Serving: vLLM OpenAI servers for base and fine-tuned models, behind the API's /v1/chat/completions.

* `engines`    one vLLM server process: its command line, environment, health and stop.
* `manager`    which engine serves which model: started on first use, shared by models with the same weights,
               least recently used one stopped past the budget, crashed ones restarted, idle ones stopped,
               engines of newly fine-tuned models started ahead of the first request; or, in `external` mode,
               the base URLs of servers that something else runs.
* `proxy`      forwards one request to an engine and streams the answer back, with the one mapper from
               engine failures to OpenAI-shaped errors.
* `interface`  what the API hands serving (its settings; `ModelSource`: a model's weights folder, the newly
               succeeded jobs) and the `ServingError` the API's error mapper sends. Serving imports nothing
               from `api`: which models a project may call is the API's business (api/services/model_access.py).
"""
