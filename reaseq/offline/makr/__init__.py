"""MAKR (DESIGN §3.2): LLM agents turn item text into structured knowledge (`job`, `agents`,
`llm`), judged against the catalog (`evaluate`) and encoded into CF-aligned item representations
(`encode`, `retrieval`)."""
