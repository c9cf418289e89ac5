"""embxfer: resumable transfer of multimodal embeddings from encoder to language workers."""
