"""``onnxq inspect``: facts about a model (facts.py) and their JSON and text renderings (render.py)."""
