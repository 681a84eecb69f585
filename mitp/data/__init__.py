"""The data path: download, archives, dataset readers, prepared manifests, loaders."""
