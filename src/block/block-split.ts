/** Round up to a multiple of `align` (any positive integer, not only powers of two). */
export const alignUp = (value: number, align: number): number => Math.ceil(value / align) * align;
