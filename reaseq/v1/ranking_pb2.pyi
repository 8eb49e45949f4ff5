from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RankRequest(_message.Message):
    __slots__ = ("user_id", "candidate_item_ids", "recent_item_ids", "deadline_ms", "explain")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    RECENT_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    candidate_item_ids: _containers.RepeatedScalarFieldContainer[str]
    recent_item_ids: _containers.RepeatedScalarFieldContainer[str]
    deadline_ms: int
    explain: bool
    def __init__(self, user_id: _Optional[str] = ..., candidate_item_ids: _Optional[_Iterable[str]] = ..., recent_item_ids: _Optional[_Iterable[str]] = ..., deadline_ms: _Optional[int] = ..., explain: _Optional[bool] = ...) -> None: ...

class AttendedBehavior(_message.Message):
    __slots__ = ("position", "source", "item_id", "generated", "gap_bucket", "weight", "knowledge")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATED_FIELD_NUMBER: _ClassVar[int]
    GAP_BUCKET_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    KNOWLEDGE_FIELD_NUMBER: _ClassVar[int]
    position: int
    source: str
    item_id: str
    generated: bool
    gap_bucket: int
    weight: float
    knowledge: str
    def __init__(self, position: _Optional[int] = ..., source: _Optional[str] = ..., item_id: _Optional[str] = ..., generated: _Optional[bool] = ..., gap_bucket: _Optional[int] = ..., weight: _Optional[float] = ..., knowledge: _Optional[str] = ...) -> None: ...

class CandidateExplanation(_message.Message):
    __slots__ = ("behaviors", "knowledge")
    BEHAVIORS_FIELD_NUMBER: _ClassVar[int]
    KNOWLEDGE_FIELD_NUMBER: _ClassVar[int]
    behaviors: _containers.RepeatedCompositeFieldContainer[AttendedBehavior]
    knowledge: str
    def __init__(self, behaviors: _Optional[_Iterable[_Union[AttendedBehavior, _Mapping]]] = ..., knowledge: _Optional[str] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("scores", "release", "model_version", "feature_version", "unknown_user", "unknown_item_indices", "unknown_recent_indices", "degraded", "explanations")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURE_VERSION_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_USER_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_ITEM_INDICES_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_RECENT_INDICES_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    EXPLANATIONS_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedScalarFieldContainer[float]
    release: str
    model_version: str
    feature_version: str
    unknown_user: bool
    unknown_item_indices: _containers.RepeatedScalarFieldContainer[int]
    unknown_recent_indices: _containers.RepeatedScalarFieldContainer[int]
    degraded: bool
    explanations: _containers.RepeatedCompositeFieldContainer[CandidateExplanation]
    def __init__(self, scores: _Optional[_Iterable[float]] = ..., release: _Optional[str] = ..., model_version: _Optional[str] = ..., feature_version: _Optional[str] = ..., unknown_user: _Optional[bool] = ..., unknown_item_indices: _Optional[_Iterable[int]] = ..., unknown_recent_indices: _Optional[_Iterable[int]] = ..., degraded: _Optional[bool] = ..., explanations: _Optional[_Iterable[_Union[CandidateExplanation, _Mapping]]] = ...) -> None: ...
