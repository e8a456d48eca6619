SELECT state, output, output_bytes FROM sisy.runs WHERE id = $1
