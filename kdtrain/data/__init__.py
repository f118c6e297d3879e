"""The data wing: datasets (built in, torchvision, the user's own folders, arrays, tables and factories) as in-memory
tensors, class maps between label spaces, and rows compared by content. Imports only the ground floor."""
